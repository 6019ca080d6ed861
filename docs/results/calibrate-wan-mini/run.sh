#!/bin/bash
# wan-mini calibration sweeps (16 calibration captions, 28 steps, seed 0), one after another
cd /work/wt-vcal
export OMP_NUM_THREADS=1 PYTHONPATH=/work/wt-vcal
C="python -m ddit_export.cli calibrate --model wan-mini --n-prompts 16 --threads 1 --quiet"
W=runs/calib-wan-mini
run() { name=$1; shift; echo "### $name: ddit-export calibrate --model wan-mini --n-prompts 16 --threads 1 $*" >> $W/log.md; \
  /usr/bin/time -f "%e s" $C "$@" --profile $W/profile-$name.json >> $W/log.md 2>&1; echo "exit $?" >> $W/log.md; }
run ladder-tail --work $W/plain --policy ladder:head=6,n4=0 --sweep tail=10,12,14,16,18,20
run ladder-head --work $W/plain --policy ladder:n4=0,tail=16 --sweep head=0,2,4,6,8,10
run ladder-n4 --work $W/plain --policy ladder:head=6,tail=16 --sweep n4=1,2,3
run rule-clip --work $W/plain --policy ddit --sweep tau=0.0005,0.00075,0.001,0.002
run rule-frame --work $W/plain --policy ddit:video_std=frame --sweep tau=0.0005,0.00075,0.001,0.002
run cache-ladder --work $W/cache --cache taylor --cache-interval 2 --policy ladder:head=6,n4=0 --sweep tail=12,16,20,22
echo done >> $W/log.md
