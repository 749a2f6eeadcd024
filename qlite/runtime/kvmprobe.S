/* A 64 KiB firmware image that takes a CPU from reset to 64-bit long mode
 * and then writes 0x2a to QEMU's isa-debug-exit port (0xf4), which makes
 * QEMU exit with status (0x2a << 1) | 1 = 85. A hypervisor that cannot run
 * a standard guest hangs or fails before that. Loaded at 0xF0000. */
    .code16
    .section .text
    .org 0
start16:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %ss
    /* GDT descriptor lives in this ROM at 0xF0000 + gdtdesc */
    movw $0xF000, %ax
    movw %ax, %ds
    lgdtl %ds:(gdtdesc)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $(0xF0000 + start32)

    .code32
start32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    /* zero 3 pages of page tables at 0x1000..0x3fff */
    movl $0x1000, %edi
    xorl %eax, %eax
    movl $(3 * 1024), %ecx
    rep stosl
    movl $0x2003, 0x1000        /* PML4[0] -> PDPT */
    movl $0x3003, 0x2000        /* PDPT[0] -> PD */
    movl $0x00000083, 0x3000    /* PD[0]: 2 MiB page at 0 */
    movl $0x00200083, 0x3008    /* PD[1]: 2..4 MiB */
    movl $0x1000, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax             /* PAE */
    movl %eax, %cr4
    movl $0xC0000080, %ecx      /* EFER */
    rdmsr
    orl $0x100, %eax            /* LME */
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax       /* PG | PE */
    movl %eax, %cr0
    ljmpl $0x18, $(0xF0000 + start64)

    .code64
start64:
    movw $0x2a, %ax
    outw %ax, $0xf4
1:  hlt
    jmp 1b

    .p2align 3
gdt:
    .quad 0x0000000000000000    /* null */
    .quad 0x00CF9A000000FFFF    /* 0x08: 32-bit code */
    .quad 0x00CF92000000FFFF    /* 0x10: data */
    .quad 0x00AF9A000000FFFF    /* 0x18: 64-bit code */
gdtdesc:
    .word gdtdesc - gdt - 1
    .long 0xF0000 + gdt

    .org 0xFFF0
reset:
    .code16
    ljmp $0xF000, $start16
    .org 0x10000
