"""Quality measurement: simulated stroke guides, classifier features, KID, and the eval harness."""
