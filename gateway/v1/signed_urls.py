"""Signed, expiring URLs of the gateway itself: where a client PUTs an upload or GETs a file without credentials.

``<path>?expires=<unix s>&signature=<HMAC-SHA256 of "METHOD\\npath\\nexpires">``, keyed by a key
derived from the secrets key (``factory.sealing``), so any gateway sharing it verifies any
other's URLs, whether auth is on or off. A URL opens one method on one path until it expires.
"""

import base64
import hashlib
import hmac
import time
from urllib.parse import quote, urlencode

from factory.errors import PermissionDenied


class UrlSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _signature(self, method: str, path: str, expires_s: int) -> str:
        mac = hmac.new(self._key, f"{method}\n{path}\n{expires_s}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def sign(self, base_url: str, method: str, path: str, ttl_s: int) -> str:
        """``base_url`` + ``path`` (quoted), opening ``method`` on it for ``ttl_s``."""
        expires_s = int(time.time()) + ttl_s
        query = urlencode({"expires": expires_s, "signature": self._signature(method, path, expires_s)})
        return f"{base_url}{quote(path, safe='/')}?{query}"

    def verify(self, method: str, path: str, expires_s: int, signature: str) -> None:
        """Return if the signature opens ``method`` on ``path`` now; :class:`PermissionDenied` otherwise."""
        expected = self._signature(method, path, expires_s)
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            raise PermissionDenied("the URL's signature is not valid")
        if expires_s <= time.time():
            raise PermissionDenied("the URL has expired")
