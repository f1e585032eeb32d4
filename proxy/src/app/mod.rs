//! The composition root: builds everything the proxy shares once, and owns its lifecycle.
