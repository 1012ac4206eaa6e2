#!/usr/bin/env bash
# Install R with the packages the live parity tests (pytest marker needs_r) compare against:
# lme4, lmerTest, pbkrtest, performance, mlmRev, mitools, mice, from Debian's packages. Idempotent and quiet:
# does nothing when they already load. Needs root (CI runs as root; locally: sudo).
set -euo pipefail
pkgs_r='c("lme4", "lmerTest", "pbkrtest", "performance", "mlmRev", "mitools", "mice")'
check() {
  command -v Rscript >/dev/null 2>&1 &&
    Rscript -e "for (p in $pkgs_r) suppressMessages(library(p, character.only = TRUE))" >/dev/null 2>&1
}
if check; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "error: R with lme4, lmerTest, pbkrtest, performance, mlmRev, mitools and mice is missing; run 'sudo bash scripts/install_r.sh'" >&2
  exit 1
fi
echo "[r] installing R and r-cran-{lme4,lmertest,pbkrtest,performance,mlmrev,mitools,mice} from Debian's packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends r-base-core r-cran-lme4 r-cran-lmertest \
  r-cran-pbkrtest r-cran-performance r-cran-mlmrev r-cran-mitools r-cran-mice >/dev/null
check || { echo "error: R packages installed but do not load" >&2; exit 1; }
echo "[r] done: $(Rscript --version 2>&1 | head -1)"
