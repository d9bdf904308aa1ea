#!/usr/bin/env bash
# The paired comparisons behind the findings table of README.md: each pair of rows of the
# study's report compared per target (`rwku compare`, docs/sweeps.md), written to compare/.
#   bash docs/results/moe-study/compare.sh
set -euo pipefail
cd "$(dirname "$0")"
OUT=out
mkdir -p compare
pair() {  # name, row A, row B
    rwku compare "$OUT" "$2" "$3" --json "compare/$1.json" > "compare/$1.md"
}
# routing shift under plain unlearning: all parameters vs the attributed expert
pair ga-full-vs-expert "GA (full)" "GA (expert)"
pair npo-full-vs-expert "NPO (full)" "NPO (expert)"
# one expert + anchor (SEUF) against all parameters: forgetting, neighbours, utility
pair ga-seuf-vs-full "GA (expert) anchor=1" "GA (full)"
pair npo-seuf-vs-full "NPO (expert) anchor=1" "NPO (full)"
# the anchor's own effect
pair ga-seuf-vs-expert "GA (expert) anchor=1" "GA (expert)"
pair npo-seuf-vs-expert "NPO (expert) anchor=1" "NPO (expert)"
# top-1 against the three best-attributed experts (both anchored)
pair ga-top1-vs-top3 "GA (expert) anchor=1" "GA (expert) anchor=1, experts=3"
# the attributed expert against a random one
pair ga-expert-vs-random "GA (expert)" "GA (expert) experts=random"
pair npo-expert-vs-random "NPO (expert)" "NPO (expert) experts=random"
# ten times the expert rate: can one expert forget, and at what cost?
pair ga-seuf-lr3e-3-vs-full "GA (expert) anchor=1, lr=0.003" "GA (full)"
pair ga-seuf-lr3e-3-vs-random "GA (expert) anchor=1, lr=0.003" "GA (expert) experts=random, lr=0.003"
