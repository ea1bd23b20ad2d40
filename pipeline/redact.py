"""Masking credentials in URLs before they are printed or logged.

Store URLs (``postgresql://user:PASSWORD@host/db``), sink URLs (``https://user:token@siem/``) and
Kafka addresses can carry a password in their user-info part or a token in their query string.
:func:`mask_url` hides both in one URL; :func:`redact` does it to every URL inside a text (an
error message, a log line, a traceback), so a message that quotes a URL by accident still shows
no password. :class:`RedactFilter` applies :func:`redact` to every log record of a handler.

>>> mask_url("postgresql+psycopg://app:s3cret@db:5432/audit?sslmode=require")
'postgresql+psycopg://app:***@db:5432/audit?sslmode=require'
>>> redact("cannot reach https://bot:tok@hooks.example/x?token=abc&team=1")
'cannot reach https://bot:***@hooks.example/x?token=***&team=1'
"""

from __future__ import annotations

import logging
import re
import traceback

MASK = "***"

# scheme://user:password@ -- the password ends at the last "@" before the host part, so a
# password holding "@" or ":" is masked whole
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#@:]*:)"
                       r"(?P<password>[^\s/?#]*)@")
# key=value in a query string or a libpq/ODBC style connection string, for keys that name a
# credential (password, passwd, pwd, secret, token, api_key, apikey, sig, signature, ...)
_SECRET_PARAM = re.compile(
    r"(?P<key>(?:^|(?<=[?&;,\s]))(?:[\w.\-]*(?:password|passwd|pwd|secret|token|api[_\-]?key|"
    r"access[_\-]?key)[\w.\-]*|sig|signature)=)(?P<value>[^&;,\s#'\"]+)",
    re.IGNORECASE)


# a whole value that is a URL: its password runs to the last "@", so one that should have been
# %-encoded ("p@ss/w:rd") is still masked whole
_WHOLE_URL = re.compile(r"^(?P<head>[A-Za-z][\w+.\-]*://[^:/@\s]*):(?P<password>.+)"
                        r"@(?P<tail>[^@]*)$", re.S)


def mask_url(url: str) -> str:
    """``url`` (a whole value, e.g. a config setting) with its password and any credential-like
    query parameter replaced by ``***``."""
    m = _WHOLE_URL.match(url)
    return redact(f"{m['head']}:{MASK}@{m['tail']}" if m else url)


def redact(text: str) -> str:
    """``text`` with the password of every URL in it and every ``password=...``,
    ``token=...`` (and the like) value replaced by ``***``."""
    if "=" not in text and "@" not in text:  # the common case: nothing to look at
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['key']}{MASK}", text)


class RedactFilter(logging.Filter):
    """Masks credentials in a record's message and in its traceback text, for any formatter
    that uses ``record.exc_text`` (the standard one does). Attach it to a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info))
                                     .rstrip("\n"))
        return True
