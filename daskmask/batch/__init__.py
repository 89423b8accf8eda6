"""Many runs: finding the runs of a BIDS derivatives dataset and masking them as a batch."""
