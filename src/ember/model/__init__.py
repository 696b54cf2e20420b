"""Model code: loader, registry, architectures, pooling. Plain torch; no engine imports."""
