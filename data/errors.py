"""User-facing errors of twolevel.

Every error a user can cause (a bad file, a missing column, a formula twolevel cannot fit) is a
:class:`TwolevelError`. Its message names the offending file, column, group or value and says what
to do. The command line prints the message on one line and exits with status 2, with no traceback.
"""


class TwolevelError(ValueError):
    """A problem with the user's input; the message says what is wrong and what to do.

    Examples
    --------
    >>> import twolevel as tl
    >>> try:
    ...     tl.lmer("y ~ x", tl.load_data("lecture"))
    ... except tl.TwolevelError as err:
    ...     print(type(err).__name__)
    FormulaError
    """


class DataError(TwolevelError):
    """The data cannot be used as given (missing file or column, bad values, too few groups).

    Examples
    --------
    >>> import twolevel as tl
    >>> try:
    ...     tl.load_data("no-such-file.csv")
    ... except tl.DataError as err:
    ...     print(str(err).split(";")[0])
    file 'no-such-file.csv' does not exist
    """


class FormulaError(TwolevelError):
    """The model formula cannot be parsed or is not a two-level model twolevel can fit.

    Examples
    --------
    >>> import twolevel as tl
    >>> try:
    ...     tl.lmer("g1rscore ~ famsesc", tl.load_data("lecture"))
    ... except tl.FormulaError:
    ...     print("refused")
    refused
    """
