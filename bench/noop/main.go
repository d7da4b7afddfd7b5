// Command noop does nothing. The bench times its start and exit, built as
// netshim is: what any Go program pays on this machine before and after its
// work, the floor under every hook's time.
package main

func main() {}
