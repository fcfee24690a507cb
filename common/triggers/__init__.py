"""Proactive scoring: event-combination triggers evaluated by a stateful
streaming operator, scored with the model's @champion, written exactly once."""
