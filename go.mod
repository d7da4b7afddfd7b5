module github.com/netshim/netshim

go 1.26.8

require github.com/BurntSushi/toml v1.6.0

require golang.org/x/sys v0.50.0 // indirect
