;;; add-to-store.scm -- add-to-store, flat and recursive, with every hash
;;; algorithm the daemon accepts, on files and trees (symlinks, executables,
;;; nested and empty directories, odd names) and a large file; then the
;;; requests a daemon must refuse: unknown algorithm, flat directory, bad
;;; names, and malformed NAR streams sent by hand.
;;;
;;; For every item added: the path (checked against the client's own
;;; computation), its path info (checked against the client's NAR), and the
;;; metadata of the files on disk (canonical modes, times, owners, links).

(load (string-append (dirname (current-filename)) "/common.scm"))

(define s (connect))

(define (copy-of file)
  "A fresh copy of FILE (a regular file): the client memoises add-to-store
by file name, so a copy makes it ask the daemon again."
  (let ((new (scratch-file (basename file))))
    (copy-file file new)
    new))

(define* (add! label store name recursive? algo file #:key expected)
  "Add FILE; record the path, its info and its files on disk; check the
path against EXPECTED when given.  Return the path or #f."
  (let ((path (expect-ok! label
                          (lambda ()
                            (add-to-store store name recursive?
                                          (symbol->string algo) file)))))
    (when path
      (when expected
        (check! (string-append label ": path") (equal? path expected)
                path expected))
      (let ((info (expect-ok! (string-append label ": query-path-info")
                              (lambda () (query-path-info store path))
                              #:encode path-info->json)))
        (when info
          (check-path-info! label info path)
          (check! (string-append label ": no references")
                  (null? (path-info-references info)))))
      (record! (string-append label ": files") (listing path)))
    path))

;;; Fixtures.

(define text-file
  (make-tree "hello.txt" `(regular ,(string->utf8 "hello, world\n"))))
(define empty-file (make-tree "empty" '(regular #vu8())))
(define exec-file
  (make-tree "run.sh" `(executable ,(string->utf8 "#!/bin/sh\necho hi\n"))))
(define big-contents (pattern-bytes (+ (* 3 1024 1024) 5) 42))
(define big-file (make-tree "big.bin" `(regular ,big-contents)))

(define the-tree
  `(directory
    ("README" (regular ,(string->utf8 "read me\n")))
    ("bin" (directory
            ("tool" (executable ,(string->utf8 "#!/bin/sh\nexit 0\n")))
            ("tool-link" (symlink "tool"))))
    ("B-upper" (regular ,(string->utf8 "upper case sorts first\n")))
    ("empty-dir" (directory))
    ("empty-file" (regular #vu8()))
    ("lib" (directory
            ("deep" (directory
                     ("deeper" (directory
                                ("leaf" (regular ,(string->utf8 "leaf\n")))))))))
    ;; Identical files: small ones are left alone, large ones (from 8 KiB
    ;; on, for the C++ daemon) are hard-linked together.
    ("big-1" (regular ,(pattern-bytes 10000 7)))
    ("big-2" (regular ,(pattern-bytes 10000 7)))
    ("big-exec" (executable ,(pattern-bytes 10000 7)))
    ("same-1" (regular ,(string->utf8 "identical contents\n")))
    ("same-2" (regular ,(string->utf8 "identical contents\n")))
    ("abs-link" (symlink "/etc/passwd"))
    ("dangling" (symlink "no/such/file"))
    ("dir-link" (symlink "lib/deep"))
    ("name with spaces" (regular ,(string->utf8 "spaces\n")))
    ("caf\u00e9" (regular ,(string->utf8 "utf-8 name\n")))))

(define tree-dir (make-tree "tree" the-tree))
(define link-only (make-tree "link" '(symlink "target/of/link")))

;;; Flat: the hash of the file's contents names the item.

(for-each
 (lambda (algo)
   (let ((label (string-append "flat " (symbol->string algo))))
     (add! label s "hello.txt" #f algo (copy-of text-file)
           #:expected (fixed-output-path "hello.txt"
                                         (digest algo (string->utf8 "hello, world\n"))
                                         #:hash-algo algo #:recursive? #f))))
 %algorithms)

(add! "flat sha256 empty file" s "empty" #f 'sha256 empty-file
      #:expected (fixed-output-path "empty" (sha256 #vu8())
                                    #:recursive? #f))
(add! "flat sha256 executable (the bit is dropped)" s "run.sh" #f 'sha256
      exec-file
      #:expected (fixed-output-path
                  "run.sh" (sha256 (string->utf8 "#!/bin/sh\necho hi\n"))
                  #:recursive? #f))
(add! "flat sha256 large file" s "big.bin" #f 'sha256 big-file
      #:expected (fixed-output-path "big.bin" (sha256 big-contents)
                                    #:recursive? #f))

;;; Recursive: the hash of the NAR names the item.

(define tree-nar (nar-bytes tree-dir))

(for-each
 (lambda (algo)
   (let ((label (string-append "recursive tree " (symbol->string algo))))
     (add! label s "tree" #t algo tree-dir
           #:expected (fixed-output-path "tree" (digest algo tree-nar)
                                         #:hash-algo algo #:recursive? #t))))
 %algorithms)

(add! "recursive sha256 regular file" s "hello.txt" #t 'sha256
      (copy-of text-file)
      #:expected (fixed-output-path "hello.txt"
                                    (sha256 (nar-bytes text-file))))
(add! "recursive sha256 executable file" s "run.sh" #t 'sha256
      (copy-of exec-file)
      #:expected (fixed-output-path "run.sh" (sha256 (nar-bytes exec-file))))
(add! "recursive sha256 symlink" s "link" #t 'sha256 link-only
      #:expected (fixed-output-path "link" (sha256 (nar-bytes link-only))))
(add! "recursive sha256 large file" s "big.bin" #t 'sha256
      (copy-of big-file)
      #:expected (fixed-output-path "big.bin" (sha256 (nar-bytes big-file))))
(add! "recursive sha1 large file" s "big.bin" #t 'sha1 (copy-of big-file)
      #:expected (fixed-output-path "big.bin" (digest 'sha1 (nar-bytes big-file))
                                    #:hash-algo 'sha1))

;;; Adding what is already there, on another connection (the client
;;; memoises per connection), gives the same path and changes nothing.

(let ((s2 (connect)))
  (add! "again: flat sha256" s2 "hello.txt" #f 'sha256 (copy-of text-file)
        #:expected (fixed-output-path "hello.txt"
                                      (sha256 (string->utf8 "hello, world\n"))
                                      #:recursive? #f))
  (add! "again: recursive tree sha256" s2 "tree" #t 'sha256 tree-dir
        #:expected (fixed-output-path "tree" (sha256 tree-nar)))
  (close-connection s2))

;;; Names and algorithms a daemon refuses.

(define* (request! label thunk #:key (must-fail? #t))
  "Make a request on a connection of its own; record its outcome and
whether the session survived.  Only failure itself is checked, and only
when MUST-FAIL?: which requests end the session, and what a daemon does
with what it accepts, are left to the differential comparison."
  (let* ((c (connect))
         (o (step! label (lambda () (thunk c)))))
    (when must-fail?
      (check! (string-append label ": refused") (error? o) o))
    (record! (string-append label ": session alive after") (alive? c))))

(define refused! request!)

(refused! "unknown algorithm sha42"
          (lambda (c) (add-to-store c "f" #f "sha42" (copy-of text-file))))
(refused! "unknown algorithm, recursive"
          (lambda (c) (add-to-store c "f" #t "sha42" (copy-of text-file))))
(refused! "flat directory"
          (lambda (c) (add-to-store c "tree" #f "sha256" tree-dir)))
(refused! "flat symlink"
          (lambda (c) (add-to-store c "link" #f "sha256" link-only)))
(refused! "name with a slash"
          (lambda (c) (add-to-store c "bad/name" #f "sha256" (copy-of text-file))))
(refused! "name starting with a dot"
          (lambda (c) (add-to-store c ".hidden" #f "sha256" (copy-of text-file))))
(request! "empty name"
          (lambda (c) (add-to-store c "" #t "sha256" (copy-of text-file)))
          #:must-fail? #f)
(refused! "name with a space"
          (lambda (c) (add-to-store c "a b" #t "sha256" (copy-of text-file))))
(request! "name of 211 characters"
          (lambda (c) (add-to-store c (make-string 211 #\n) #t "sha256"
                                    (copy-of text-file)))
          #:must-fail? #f)
(request! "name of 212 characters"
          (lambda (c) (add-to-store c (make-string 212 #\m) #t "sha256"
                                    (copy-of text-file)))
          #:must-fail? #f)

;;; Malformed NAR streams, written by hand after a valid request header.

(define (nar-token str port) (write-string str port))

(define (regular-entry name contents port)
  (for-each (cut nar-token <> port)
            `("entry" "(" "name" ,name "node" "(" "type" "regular"
              "contents"))
  (write-bytevector contents port)
  (for-each (cut nar-token <> port) '(")" ")")))

(define (raw-add-to-store store name recursive? algo write-nar)
  (raw-operation store 7
                 (lambda (p)
                   (write-string name p)
                   (write-int 1 p)
                   (write-int (if recursive? 1 0) p)
                   (write-string algo p)
                   (write-nar p))
                 read-string))

(define* (bad-nar! label write-nar #:key (must-fail? #t))
  ;; Every NAR here is complete, so no daemon has to wait for more bytes.
  (request! label
            (lambda (c)
              (let ((path (raw-add-to-store c "bad-nar" #t "sha256" write-nar)))
                ;; If it was accepted, what is there now?
                `(("path" . ,path)
                  ("files" . ,(if (file-exists? path) (listing path) 'null))
                  ("info" . ,(path-info->json (query-path-info c path)))
                  ;; Whether the recorded NAR hash is that of the files.
                  ("hash_matches_files"
                   . ,(bytevector=? (query-path-hash c path)
                                    (sha256 (nar-bytes path)))))))
            #:must-fail? must-fail?))

(bad-nar! "NAR with a wrong magic"
          (lambda (p)
            (for-each (cut nar-token <> p)
                      '("nix-archive-2" "(" "type" "regular" "contents"))
            (write-bytevector #vu8(1 2 3) p)
            (nar-token ")" p)))
(bad-nar! "NAR with an unknown file type"
          (lambda (p)
            (for-each (cut nar-token <> p)
                      '("nix-archive-1" "(" "type" "fifo" ")"))))
(bad-nar! "NAR directory not sorted"
          (lambda (p)
            (for-each (cut nar-token <> p)
                      '("nix-archive-1" "(" "type" "directory"))
            (regular-entry "b" #vu8(1) p)
            (regular-entry "a" #vu8(2) p)
            (nar-token ")" p))
          #:must-fail? #f)
(bad-nar! "NAR directory with a duplicate entry"
          (lambda (p)
            (for-each (cut nar-token <> p)
                      '("nix-archive-1" "(" "type" "directory"))
            (regular-entry "a" #vu8(1) p)
            (regular-entry "a" #vu8(2) p)
            (nar-token ")" p))
          #:must-fail? #f)
(bad-nar! "NAR entry named .."
          (lambda (p)
            (for-each (cut nar-token <> p)
                      '("nix-archive-1" "(" "type" "directory"))
            (regular-entry ".." #vu8(1) p)
            (nar-token ")" p)))
(bad-nar! "NAR entry name with a slash"
          (lambda (p)
            (for-each (cut nar-token <> p)
                      '("nix-archive-1" "(" "type" "directory"))
            (regular-entry "a/b" #vu8(1) p)
            (nar-token ")" p)))
(bad-nar! "NAR with a bad executable marker"
          (lambda (p)
            (for-each (cut nar-token <> p)
                      '("nix-archive-1" "(" "type" "regular" "executable"
                        "yes" "contents"))
            (write-bytevector #vu8(1) p)
            (nar-token ")" p))
          #:must-fail? #f)
(bad-nar! "NAR with an unknown field"
          (lambda (p)
            (for-each (cut nar-token <> p)
                      '("nix-archive-1" "(" "type" "regular" "colour" "red"
                        ")"))))

;;; The first session saw none of the refused requests.
(step-alive! "first session still alive" s #t)

(finish!)
