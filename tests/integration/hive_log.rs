//! Registry hive tests (hive_log): filled in by the work on issue 5.
