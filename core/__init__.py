"""The foundation every step imports: recipe loading and validation (recipe), atomic writes (io), the
language table (languages) and text helpers (text), hashes (hashing), lineage, default paths (paths)
and logging (log). It imports nothing from data, training or eval."""
