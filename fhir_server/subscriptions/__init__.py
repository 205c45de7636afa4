"""R4 Subscriptions with rest-hook channels (docs/adr/0007-subscriptions.md).

``checks``: what a Subscription must be (criteria parsed by the search parser, rest-hook only) and its
activation on write; ``service``: the subscriptions in effect in this process, matching each committed
write, the status the server maintains; ``delivery``: the background threads that notify, with retries.
"""
from fhir_server.subscriptions.checks import OWNER_SYSTEM, Definition, SubscriptionValidator
from fhir_server.subscriptions.delivery import Deliveries, Notification, Outcome
from fhir_server.subscriptions.service import SubscriptionService

__all__ = ["OWNER_SYSTEM", "Definition", "Deliveries", "Notification", "Outcome", "SubscriptionService",
           "SubscriptionValidator"]
