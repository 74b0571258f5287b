"""Seller events out: SCX -> RabbitMQ (``scx-forwarder events``).

``service`` wires the bridge; ``bridge`` polls, publishes and acknowledges; ``mapping`` turns a
polled item into a marketplace message; ``publisher`` publishes it with confirms; ``tries``
counts the deliveries that ended unacknowledged, against SCX's cap of 10.
"""
