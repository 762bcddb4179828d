module shoprank/benchmarks/loadgen

go 1.22
