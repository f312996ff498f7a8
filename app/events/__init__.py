"""Events: what Herald tells subscribers happened, durable and signed (issue 15).

::

    a change (accept, a round, cancel; a channel's circuit)
        │  body.py builds its events (pure)
        ▼
    outbox.py appends them, in the change's own transaction: ``events`` (once) and
    ``event_deliveries`` (one row per subscription that takes the event)
        │
        ▼
    dispatcher.py, a loop of its own: claims due deliveries under a lease (one notification's
    events in the order they happened), POSTs each signed per Standard Webhooks through the
    guarded outbound client, records every try in ``event_attempts``, retries on the
    subscription's schedule, breaks the circuit of a failing subscription

The event log API (``app.api.events``) reads what ``store.py`` keeps.
"""
