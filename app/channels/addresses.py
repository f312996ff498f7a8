"""The syntax of the recipient addresses checked at submit: email (addr-spec) and phone (E.164).

**Email.** ``recipient.email`` is a bare addr-spec, ``local@domain``, at most 254 characters
(what fits in an SMTP path): no display name, no spaces or control characters (so no CR/LF
that could smuggle a header or an SMTP command), exactly one ``@``; the local part a dot-atom
of at most 64 bytes (quoted local parts are refused); the domain a name with at least one dot
(``example.com``), its labels of letters, digits and inner hyphens (non-ASCII letters allowed,
for internationalised domains), or an address literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``).
Nothing is looked up: whether the domain receives mail is for the mail server to say.

**Phone.** ``recipient.phone`` is E.164: ``+``, a country code that does not start with 0, then
the subscriber number, 8 to 15 digits in all. Spaces, hyphens, dots and parentheses between
the digits are accepted and dropped (``+1 (415) 555-0100`` → ``+14155550100``).
"""

from __future__ import annotations

import ipaddress
import re

EMAIL_LIMIT = 254
LOCAL_PART_LIMIT = 64
DOMAIN_LIMIT = 253

E164_HINT = "E.164: '+', country code and number, 8-15 digits (e.g. +14155550100)"

_SEPARATORS = re.compile(r"[ \-.()]")
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_LOCAL_PART = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_LABEL_CHAR = r"[A-Za-z0-9\u0080-\U0010ffff]"
_LABEL = re.compile(rf"{_LABEL_CHAR}(?:[A-Za-z0-9\-\u0080-\U0010ffff]{{0,61}}{_LABEL_CHAR})?")
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f]")


def normalize_e164(raw: str) -> str | None:
    """``raw`` as ``+<digits>`` when it is an E.164 number (separators dropped), else ``None``."""
    candidate = _SEPARATORS.sub("", raw.strip())
    return candidate if _E164.fullmatch(candidate) else None


def checked_e164(value: str, refusal: str) -> str:
    """``value`` as E.164 (``normalize_e164``); ``ValueError`` ``"<refusal> E.164: …"`` if not."""
    number = normalize_e164(value)
    if number is None:
        raise ValueError(f"{refusal} {E164_HINT}")
    return number


def email_problem(value: str) -> str | None:
    """Why ``value`` is not an email address Herald accepts, or ``None`` when it is one."""
    if len(value) > EMAIL_LIMIT:
        return f"at most {EMAIL_LIMIT} characters"
    if _UNSAFE.search(value):
        return "must not contain spaces or control characters (CR, LF, tab …)"
    if value.count("@") != 1:
        return "must be local@domain, with exactly one @"
    local, _, domain = value.partition("@")
    if len(local.encode("utf-8")) > LOCAL_PART_LIMIT or not _LOCAL_PART.fullmatch(local):
        return (
            f"the part before @ must be at most {LOCAL_PART_LIMIT} bytes of letters, digits "
            "and !#$%&'*+/=?^_`{|}~- in dot-separated words"
        )
    if not _domain_ok(domain):
        return (
            "the part after @ must be a domain name with a dot (example.com) "
            "or an address literal ([192.0.2.1])"
        )
    return None


def _domain_ok(domain: str) -> bool:
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        version, tagged = (6, literal[5:]) if literal[:5].lower() == "ipv6:" else (4, literal)
        try:
            return ipaddress.ip_address(tagged).version == version
        except ValueError:
            return False
    labels = domain.split(".")
    return (
        len(domain) <= DOMAIN_LIMIT
        and len(labels) >= 2
        and all(_LABEL.fullmatch(label) for label in labels)
    )
