#include "textflag.h"

#define SYS_rt_sigprocmask	14
#define SYS_poll		7
#define SYS_clone		56
#define SYS_exit		60
#define SYS_close_range		436
#define SIG_SETMASK		2
#define CLONE_VM		0x100
#define POLLIN			1
#define EINTR			4

// func clone(stack uintptr, pidfd int32) int64
//
// The child runs only the code after label child, on stack, with system
// calls alone: it must not call, return or touch Go's runtime.
TEXT ·clone(SB),NOSPLIT,$16-24
	MOVQ	stack+0(FP), R9		// kept by the kernel across system calls,
	MOVL	pidfd+8(FP), R12	// in the child too
	// Block every signal on this thread; the old mask goes to 8(SP).
	MOVQ	$-1, 0(SP)
	MOVQ	$SIG_SETMASK, DI
	LEAQ	0(SP), SI
	LEAQ	8(SP), DX
	MOVQ	$8, R10
	MOVQ	$SYS_rt_sigprocmask, AX
	SYSCALL
	CMPQ	AX, $0
	JNE	done			// nothing blocked: no clone either
	MOVQ	$CLONE_VM, DI		// exit signal 0
	MOVQ	R9, SI
	MOVQ	$0, DX
	MOVQ	$0, R10
	MOVQ	$0, R8
	MOVQ	$SYS_clone, AX
	SYSCALL
	CMPQ	AX, $0
	JEQ	child
	MOVQ	AX, R13
	// The old mask back.
	MOVQ	$SIG_SETMASK, DI
	LEAQ	8(SP), SI
	MOVQ	$0, DX
	MOVQ	$8, R10
	MOVQ	$SYS_rt_sigprocmask, AX
	SYSCALL
	MOVQ	R13, AX
done:
	MOVQ	AX, ret+16(FP)
	RET

child:
	// Close every descriptor but the pidfd. Without close_range (before
	// Linux 5.9), exit at once rather than hold the hook's pipes open.
	MOVQ	$0, DI
	MOVQ	R12, SI
	DECQ	SI
	MOVQ	$0, DX
	MOVQ	$SYS_close_range, AX
	SYSCALL
	CMPQ	AX, $0
	JNE	exit
	MOVQ	R12, DI
	INCQ	DI
	MOVL	$0xffffffff, SI
	MOVQ	$0, DX
	MOVQ	$SYS_close_range, AX
	SYSCALL
	// struct pollfd {fd, events = POLLIN, revents = 0} below the stack's
	// top; poll until the process the pidfd names is gone.
	LEAQ	-16(R9), R13
	MOVL	R12, 0(R13)
	MOVL	$POLLIN, 4(R13)
wait:
	MOVQ	R13, DI
	MOVQ	$1, SI
	MOVQ	$-1, DX
	MOVQ	$SYS_poll, AX
	SYSCALL
	CMPQ	AX, $-EINTR
	JEQ	wait
exit:
	MOVQ	$0, DI
	MOVQ	$SYS_exit, AX
	SYSCALL
	JMP	exit
