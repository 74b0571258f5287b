"""The fields JTL's generated models require of each seller event type (``listInvalidProperties``,
"can't be null"), transcribed from ``API-FACTS.md`` ("Required fields per type"), and a check.

``a[].b``: ``a`` is a non-empty list and every item has ``b``; ``a.b``: object ``a`` has ``b``.
"""

from __future__ import annotations

from typing import Any

_ORDER = ("sellerId", "orderId")
_PRICES = ("priceList[].id", "priceList[].quantityPriceList[].amount")
REQUIRED: dict[str, tuple[str, ...]] = {
    "System:Test": (),
    "System:Notification": ("channel", "sellerId", "message", "severity"),
    "Seller:Order.Confirmed": _ORDER,
    "Seller:Order.Shipping": (*_ORDER, "shippingComplete", "shippingItems[].carrier"),
    "Seller:Order.Payment": (*_ORDER, "paymentComplete", "paidAt"),
    "Seller:Order.Cancellation.Request": (
        "orderCancellationRequestId",
        *_ORDER,
        "orderItem[].orderItemId",
        "orderItem[].quantity",
    ),
    "Seller:Order.Cancellation.Accepted": ("sellerId", "orderCancellationRequestId"),
    "Seller:Order.Cancellation.Denied": ("sellerId", "orderCancellationRequestId", "reason"),
    "Seller:Order.Refund": (
        "refundId",
        *_ORDER,
        "orderItem[].orderItemId",
        "orderItem[].quantity",
        "orderItem[].reason",
        "orderItem[].refund",
        "orderItem[].refundCurrency",
    ),
    "Seller:Order.Invoice": (
        "type",
        *_ORDER,
        "invoiceNumber",
        "documentId",
        "documentExpiresAt",
    ),
    "Seller:Order.ReturnReceived": (
        *_ORDER,
        "sellerReturnId",
        "orderItem[].orderItemId",
        "orderItem[].quantity",
        "orderItem[].returnReason",
        "orderItem[].condition",
        "orderItem[].acceptReturn",
    ),
    "Seller:Offer.New": ("sellerId", "offerId", *_PRICES, "sku"),
    "Seller:Offer.Update": ("sellerId", "offerId", *_PRICES, "sku"),
    "Seller:Offer.End": ("sellerId", "offerId"),
    "Seller:Offer.StockUpdate": ("sellerId", "offerId", "quantity"),
    "Seller:Offer.PriceUpdate": ("sellerId", "offerId", *_PRICES),
    "Seller:Report.Request": ("sellerId", "reportType", "reportId"),
    "Seller:Channel.Unlinked": ("sellerId", "reason", "unlinkedAt"),
    "Seller:Meta.SellerAttributesUpdateRequest": (),
    "Seller:Ticket.Reply": ("sellerId", "ticketId", "createdAt", "from.role", "message"),
}
# Shapes JTL's models refuse that a loose reading would take (API-FACTS, issue 18).
FORBIDDEN: dict[str, tuple[str, ...]] = {"Seller:Order.Shipping": ("carrier",)}


def missing(event_type: str, payload: dict[str, Any]) -> list[str]:
    """The required paths ``payload`` lacks (or holds as null / an empty list)."""
    gaps = [path for path in REQUIRED[event_type] if not _has(payload, path.split("."))]
    return gaps + [f"not {key}" for key in FORBIDDEN.get(event_type, ()) if key in payload]


def _has(value: Any, steps: list[str]) -> bool:
    if not steps:
        return value is not None
    step, rest = steps[0], steps[1:]
    if step.endswith("[]"):
        items = value.get(step[:-2]) if isinstance(value, dict) else None
        return isinstance(items, list) and bool(items) and all(_has(i, rest) for i in items)
    return isinstance(value, dict) and _has(value.get(step), rest)
