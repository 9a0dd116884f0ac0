#!/bin/sh
# Written by rke2-firstboot from cloud-config.
'ls' '-l' '/'
'sh' '-xc' 'echo $(date) '\'': hello world!'\'''
ls -l /root
