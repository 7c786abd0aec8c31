//! Weighted rendezvous placement over zones (no I/O).
