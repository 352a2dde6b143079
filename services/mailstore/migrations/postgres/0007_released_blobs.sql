-- A released blob keeps its blob_refs row at refcount 0 until its file is
-- deleted under that row's lock; the housekeeping sweep finds the rows a
-- crash left at 0 through this small index instead of scanning every blob.
CREATE INDEX blob_refs_released ON blob_refs (blob) WHERE refcount = 0;
