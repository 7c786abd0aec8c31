//! Stripe math, Reed-Solomon codec and shard checksums (no I/O).
