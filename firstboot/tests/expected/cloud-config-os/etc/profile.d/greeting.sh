export GREETING="hello from gzip"
