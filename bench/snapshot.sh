#!/usr/bin/env bash
# Export the committed HEAD to a folder so benchmarks run a fixed Ember while others edit the tree:
#   eval "$(bash bench/snapshot.sh)"    # sets PYTHONPATH and EMBER_BENCH_COMMIT, prints the folder
set -euo pipefail
commit="$(git rev-parse --short HEAD)"
dest="/tmp/ember-bench-src-$commit"
if [ ! -d "$dest" ]; then
  mkdir -p "$dest.tmp" && git archive HEAD | tar -x -C "$dest.tmp" && mv "$dest.tmp" "$dest"
fi
echo "export PYTHONPATH=$dest/src EMBER_BENCH_COMMIT=$commit EMBER_BENCH_ROOT=$dest"
