"""Two OpenSSL settings Python's `ssl` module does not expose, which exporter-toolkit's web config needs.

- the key-exchange groups a server accepts, as a list (`curve_preferences`); `SSLContext.set_ecdh_curve` takes one;
- asking for a client certificate without verifying it (`RequestClientCert`, `RequireAnyClientCert`); Python can
  only request a certificate together with chain verification.

Both are reached through the SSL_CTX pointer of an `ssl.SSLContext` and the libssl that `_ssl` itself is linked
against (never another copy). Before touching anything we check that the pointer really is that context (its
options read through OpenSSL equal `SSLContext.options`); if not, `TlsExtensionError` says so and the caller refuses
the configuration rather than serving something weaker than the file asks for.
"""

from __future__ import annotations

import _ssl
import ctypes
import ssl
import sys
from collections.abc import Sequence
from typing import Final

_SSL_CTRL_SET_GROUPS_LIST: Final = 92
_SSL_VERIFY_PEER: Final = 0x01
_SSL_VERIFY_FAIL_IF_NO_PEER_CERT: Final = 0x02
_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


class TlsExtensionError(RuntimeError):
    """The OpenSSL setting could not be applied; str() says which and why."""


def _accept_any(preverify_ok: int, store: int | None) -> int:
    return 1  # the certificate was asked for and is kept; whether it chains to anything does not matter


# Module-level so the C callback outlives every context that points at it.
_ACCEPT_ANY: Final = _VERIFY_CALLBACK(_accept_any)


def _library() -> ctypes.CDLL:
    lib = ctypes.CDLL(_ssl.__file__)
    lib.SSL_CTX_ctrl.restype = ctypes.c_long
    lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_set_verify.restype = None
    lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK]
    return lib


def _pointer(ctx: ssl.SSLContext) -> tuple[ctypes.CDLL, int]:
    """libssl and the SSL_CTX* of `ctx` (the first field after PyObject_HEAD in CPython's PySSLContext)."""
    if sys.implementation.name != "cpython":
        raise TlsExtensionError("needs CPython's ssl module")
    try:
        lib = _library()
    except (OSError, AttributeError) as exc:
        raise TlsExtensionError(f"libssl functions not reachable ({type(exc).__name__})") from None
    address = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not address or lib.SSL_CTX_get_options(address) != int(ctx.options):
        raise TlsExtensionError("the OpenSSL context behind ssl.SSLContext could not be located")
    return lib, address


def set_groups(ctx: ssl.SSLContext, groups: Sequence[str]) -> None:
    """Restrict key exchange to `groups` (OpenSSL names, most preferred first)."""
    lib, address = _pointer(ctx)
    if lib.SSL_CTX_ctrl(address, _SSL_CTRL_SET_GROUPS_LIST, 0, ":".join(groups).encode("ascii")) != 1:
        raise TlsExtensionError(f"OpenSSL refused the groups {':'.join(groups)}")


def request_any_client_certificate(ctx: ssl.SSLContext, *, required: bool) -> None:
    """Ask every client for a certificate and accept whatever it sends; with `required`, refuse one that sends none.

    Set this after everything else on the context: assigning `SSLContext.verify_mode` later would drop it.
    """
    lib, address = _pointer(ctx)
    mode = _SSL_VERIFY_PEER | (_SSL_VERIFY_FAIL_IF_NO_PEER_CERT if required else 0)
    lib.SSL_CTX_set_verify(address, mode, _ACCEPT_ANY)
