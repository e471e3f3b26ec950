module github.com/hpfeeds-go/hpfeeds

go 1.26.8

require (
	github.com/fsnotify/fsnotify v1.10.1 // indirect
	golang.org/x/sys v0.13.0 // indirect
)
