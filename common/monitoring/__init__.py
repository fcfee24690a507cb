"""Runtime monitoring: evaluation of logged predictions against late outcomes,
drift of online features and scores against the training set, and the
retraining policy that closes the loop (docs/monitoring.md)."""
