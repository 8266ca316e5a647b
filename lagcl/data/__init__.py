"""Raw-format readers, signing, k-core filtering and the per-user split."""
