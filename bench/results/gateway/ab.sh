#!/bin/bash
# Interleaved before/after runs of `sagesched bench gateway`, one direct/picker pair per run.
# Usage: ab.sh TAG RATE ROUNDS DURATION EXTRA TREE...
# Each TREE is a directory under $AB_ROOT (default /tmp/gwb) holding a tree to measure (`git archive`
# of a commit, with the files under test copied in); `sagesched` is imported from that tree (cwd).
# The order of the trees flips every round; rows are appended to $AB_ROOT/ab-TAG.txt, tree first.
root=${AB_ROOT:-/tmp/gwb}
tag=$1; rate=$2; rounds=$3; dur=$4; extra=$5; shift 5
trees=("$@")
for r in $(seq 1 "$rounds"); do
  if (( r % 2 == 0 )); then order=$(printf '%s\n' "${trees[@]}" | tac); else order=$(printf '%s\n' "${trees[@]}"); fi
  for t in $order; do
    (cd "$root/$t" && python -m sagesched.cli bench gateway --rates "$rate" --duration "$dur" --repeats 1 $extra \
       2>/dev/null | grep "^$rate " | sed "s/^/$t /") >> "$root/ab-$tag.txt"
  done
done
