# Shortcuts; each target runs one documented command.
.PHONY: run cluster stop clean test

# Build, start a five-node local cluster and open the shell on it.
run:
	scripts/cluster.sh

# The same cluster without the shell; Ctrl-C stops it.
cluster:
	scripts/cluster.sh --no-shell

stop:
	scripts/cluster.sh stop

# Remove the local cluster's data (the prototype's `make clean`).
clean:
	scripts/cluster.sh clean

# Exactly what CI runs.
test:
	cargo test --workspace --release
