//! Registry hive tests (hive_core): filled in by the work on issue 5.
