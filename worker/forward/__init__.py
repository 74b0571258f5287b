"""Tickets in: RabbitMQ -> SCX (``scx-forwarder run``).

``service`` wires settings, client and consumer; ``consumer`` decodes and settles each delivery;
``delivery`` and ``progress`` do the steps of one message and remember them; ``mapping``,
``envelope`` and ``attachments`` turn a message into a ``Ticket`` and its files.
"""
