#!/bin/bash
cd /work/wt-vcal
export OMP_NUM_THREADS=1 PYTHONPATH=/work/wt-vcal
C="python -m ddit_export.cli calibrate --model wan-mini --threads 1 --quiet"
W=runs/calib-wan-mini
run() { name=$1; shift; echo "### $name: ddit-export calibrate --model wan-mini --threads 1 $*" >> $W/log.md; \
  /usr/bin/time -f "%e s" $C "$@" --profile $W/profile-$name.json >> $W/log.md 2>&1; echo "exit $?" >> $W/log.md; }
run cache3-ladder --n-prompts 16 --work $W/cache3 --cache taylor --cache-interval 3 --policy ladder:head=6,n4=0 --sweep tail=16,20,22
run cache4-ladder --n-prompts 16 --work $W/cache4 --cache taylor --cache-interval 4 --policy ladder:head=6,n4=0 --sweep tail=20,22
H="--prompts $W/heldout-32.txt"
run heldout-ladder $H --work $W/heldout-plain --policy ladder:head=6,n4=0 --sweep tail=16,18,20
run heldout-cache2 $H --work $W/heldout-cache2 --cache taylor --cache-interval 2 --policy ladder:head=6,n4=0 --sweep tail=16,20,22
echo done2 >> $W/log.md
