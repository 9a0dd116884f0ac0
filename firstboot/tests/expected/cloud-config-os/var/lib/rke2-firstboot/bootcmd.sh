#!/bin/sh
# Written by rke2-firstboot from cloud-config.
echo 192.168.1.130 mirror.example.internal >> /etc/hosts
'sysctl' '-w' 'vm.max_map_count=262144'
