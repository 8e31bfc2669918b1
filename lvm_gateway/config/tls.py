"""TLS settings of a variant's `https://` endpoints, checked when the config is validated.

`validate`, `serve` and hot reload load the config through the same model, so a CA bundle or a
client certificate that cannot be loaded is a validation error with its path
(`variants.phase2.tls.ca_file: ...`) everywhere, never a traceback at start-up.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from pydantic import field_validator, model_validator

from lvm_gateway.contract.strict import StrictModel


def _reason(exc: OSError | ssl.SSLError) -> str:
    return getattr(exc, "reason", None) or exc.strerror or str(exc)


class TLSSpec(StrictModel):
    ca_file: str | None = None  # PEM bundle to verify upstreams with; None: the system store
    cert_file: str | None = None  # client certificate for mutual TLS (PEM), with key_file
    key_file: str | None = None
    verify: bool = True  # False skips certificate and host name checks (test setups only)

    @field_validator("ca_file")
    @classmethod
    def _loadable_ca(cls, path: str | None) -> str | None:
        if path is not None:
            if not Path(path).is_file():
                raise ValueError(f"{path}: no such file")
            try:
                ssl.create_default_context().load_verify_locations(cafile=path)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"{path}: not a PEM CA bundle ({_reason(exc)})") from exc
        return path

    @field_validator("cert_file", "key_file")
    @classmethod
    def _exists(cls, path: str | None) -> str | None:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{path}: no such file")
        return path

    @model_validator(mode="after")
    def _client_pair(self) -> TLSSpec:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")
        if self.cert_file is not None:
            try:
                ssl.create_default_context().load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"cert_file/key_file: cannot load the client certificate ({_reason(exc)})"
                ) from exc
        return self

    def context(self) -> ssl.SSLContext:
        """The client context; the server name (SNI, host check) comes from each endpoint URL."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file is not None:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx
