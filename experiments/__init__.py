"""Small-scale reproductions of the seeds' claims with the layers of ``sympow.nn``; see README.md."""
