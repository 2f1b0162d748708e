//! HTTPS receivers for delivery tests (see the pipeline issue).
