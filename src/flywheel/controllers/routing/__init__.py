"""Request-path decisions: classification, output-length prediction, deadline-aware admission."""
