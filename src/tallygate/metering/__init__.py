"""Metering: the durable outbox of usage events and the worker that delivers them."""
