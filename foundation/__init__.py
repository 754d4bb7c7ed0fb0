"""The foundation every role stands on: settings (the only reader of the environment), logging, Kafka
clients and the keyed batch sender, topic specs, dead letters, BLAS limits, progress bars.

Above ``schemas`` and below everything else: it imports nothing of ours but ``schemas``.
"""
