"""What the phone-number channel types (``twilio``, ``whatsapp``) share.

**Recipient numbers.** ``recipient.phone`` must be E.164 (``app.channels.addresses``), which is
checked when a notification is submitted. A notification stored before that check may still
hold a number that is not E.164 or a blank one: then the channel has no address for the
recipient (``skipped``/``no_address``) and no provider call is made.

**Message text.** An SMS or chat message has no subject line, so the body is the subject, a
newline, then the text (the HTML with its tags stripped when only HTML was given); either part
may be absent. A body longer than the provider's limit is cut and ends with ``…``. The limit is
counted in UTF-16 code units (an emoji counts twice): the providers document "characters"
without saying how they count them, and UTF-16 units are never fewer than code points, so a
cut body is never refused for its length.
"""

from __future__ import annotations

from app.channels.addresses import E164_HINT, normalize_e164
from app.channels.base import DeliveryResult, ErrorClass, Message
from app.channels.text import Unit, clip


def recipient_number(message: Message) -> str | DeliveryResult:
    """The recipient's E.164 number, or the ``no_address`` skip that says why there is none."""
    raw = message.recipient.phone
    if raw is None or not raw.strip():
        return DeliveryResult.skipped("no_address", "recipient has no phone")
    number = normalize_e164(raw)
    if number is None:
        return DeliveryResult.skipped("no_address", f"recipient phone is not a valid {E164_HINT}")
    return number


def message_body(message: Message, limit: int) -> str:
    """Subject and text as one plain-text body of at most ``limit`` UTF-16 code units."""
    subject = (message.subject or "").strip()
    text = message.plain_text().strip()
    body = "\n".join(part for part in (subject, text) if part)
    return clip(body, limit, Unit.UTF16)


def number_and_body(message: Message, limit: int) -> tuple[str, str] | DeliveryResult:
    """The recipient's E.164 number and the body to send, or the failure that stops the send
    before any provider call (``no_address``, ``empty_body``)."""
    number = recipient_number(message)
    if isinstance(number, DeliveryResult):
        return number
    body = message_body(message, limit)
    return (number, body) if body else empty_body()


def empty_body() -> DeliveryResult:
    return DeliveryResult.failed(
        ErrorClass.PERMANENT, "empty_body", "the notification has no subject or text to send"
    )
