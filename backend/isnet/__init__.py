"""ISNet itself: network, weights, pre- and post-processing, engines, training; no HTTP, Label Studio or queues."""
