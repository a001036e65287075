"""phg's own software version: the one place it is written (pyproject.toml reads it, `phg --version`,
`phg.__version__` and the gateway's PhgDevice.version MDC_ID_PROD_SPEC_SW carry it)."""

__version__ = "0.1.0"
