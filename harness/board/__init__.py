"""Reading records: the run store, published boards, statistics and the tables built from them. The read side
meets the write side (`run/`, `studies/`) only at the store."""
