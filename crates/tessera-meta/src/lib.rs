//! Metadata node: openraft + sled.
