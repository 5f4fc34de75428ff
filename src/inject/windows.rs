//! Windows guest adaptation: the registry edits that make a storage driver boot-critical.
