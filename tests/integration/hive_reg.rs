//! Registry hive tests (hive_reg): filled in by the work on issue 5.
