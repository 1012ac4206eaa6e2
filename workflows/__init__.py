"""Workflows: command line, lecture report, plots (the top layer)."""
